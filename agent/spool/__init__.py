"""The crash-safe on-disk queue of sealed bundles (docs/ARCHITECTURE.md §5).

Imports core, bundle and drivers; capture writes into it and upload drains it.
"""
