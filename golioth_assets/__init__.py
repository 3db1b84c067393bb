"""golioth-sync: keep a PostgreSQL device table and the Golioth device registry in two-way sync."""
