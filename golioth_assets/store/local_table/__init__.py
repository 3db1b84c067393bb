"""The local side of a sync: a product's own device table (or golioth-sync's built-in one),
described by a mapping and read and written only through this package."""
