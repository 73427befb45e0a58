"""What to do about a fault, as the collector shows it: the built-in remedy
(agent.bundle.remedies) in the reader's language, or the fleet's own wording from
`[collector.remedies."<fault key>"]`.

Which text wins, for each of merchant and support separately: the fleet's text for that
language (`translations.<lang>`), else the fleet's plain text (in every language: a
fleet's own words, such as its hotline, beat a generic translation), else the built-in
text translated (collector.i18n), else the built-in English text.
"""

from __future__ import annotations

from agent.bundle.remedies import Remedy, remedy
from collector.config import CollectorConfig
from collector.i18n import translator


def remedy_for(key: str, cfg: CollectorConfig, lang: str) -> Remedy:
    """The remedy of a fault key for readers of lang; never fails (an unknown key gets the
    generic remedy, a missing translation the English text)."""
    base = remedy(key)
    tr = translator(lang)
    merchant, support = tr.gettext(base.merchant), tr.gettext(base.support)
    ov = cfg.remedies.get(key)
    if ov is None:
        return Remedy(merchant, support)
    own = ov.translations.get(lang)
    return Remedy(
        (own.merchant if own else "") or ov.merchant or merchant,
        (own.support if own else "") or ov.support or support,
    )
