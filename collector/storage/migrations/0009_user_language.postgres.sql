-- A user's own language for the pages (issue 15 item 10, collector/i18n.py): '' follows
-- the browser's Accept-Language, else a tag the collector speaks ('en', 'zh-Hans').
ALTER TABLE users ADD COLUMN language TEXT NOT NULL DEFAULT '';
