"""The shipped default of [screen] sensitive_windows: screens that are never captured.

Used whenever the config does not set `sensitive_windows` (an explicit `[]`
turns window matching off). Each pattern is a Python regex searched in an X11
window title (the active window and every viewable one) or, on Android, in the
focused window's title, package and activity (`dumpsys window`). A match means
no screenshot (agent/capture/privacy.py). Kept narrow so that a sale screen is
still captured: words that name a secret, and activity classes documented as
PIN or card entry screens.
"""

from __future__ import annotations

DEFAULT_SENSITIVE_WINDOWS: tuple[str, ...] = (
    # Titles in words: "Enter PIN", "PIN entry", "PIN:" (not "Pinned", "Spinner").
    r"(?i)\bPIN\b",
    # Password / passcode / passphrase prompts, and the words a few locales use.
    r"(?i)\bpass(word|code|phrase)\b|\bpasswort\b|\bkennwort\b|\bmot de passe\b|\bcontrase[ñn]a\b|\bsenha\b",
    # Manual card entry: card number, CVV/CVC/CSC, security code.
    r"(?i)\bcard\s*(number|no\.?|details)\b|\b(CVV|CVC|CSC|CVV2|CVC2)\b|\bsecurity\s+code\b",
    # Android activity / class names spelled in CamelCase (no word breaks):
    # PinEntryActivity, EnterPinActivity, PinPadFragment, PasswordDialog, ...
    r"Pin(Entry|Pad|Input|Verify|Verification)?(Activity|Fragment|Dialog)\b",
    r"Password(Entry|Input)?(Activity|Fragment|Dialog)\b",
    r"Card(Entry|Input|Details)(Activity|Fragment|Dialog)\b",
    # AOSP Settings lock screens (com.android.settings.password.ConfirmLockPassword,
    # ChooseLockPassword, ConfirmLockPattern ...): the device's own PIN/password.
    r"\b(Confirm|Choose)Lock(Password|Pattern|Pin)\b",
    # Stripe Android SDK card entry (com.stripe.android.view.AddPaymentMethodActivity,
    # PaymentMethodsActivity, PaymentFlowActivity; paymentsheet.PaymentSheetActivity).
    r"\bcom\.stripe\.android\.(view\.(AddPaymentMethod|PaymentMethods|PaymentFlow)|paymentsheet\.PaymentSheet)Activity\b",
    # Square In-App Payments SDK card entry screen (package sqip, CardEntry activity).
    r"\bsqip\.[A-Za-z.]*CardEntry",
    # Braintree Drop-in UI (com.braintreepayments.api.DropInActivity).
    r"\bcom\.braintreepayments\.api\.DropInActivity\b",
)
