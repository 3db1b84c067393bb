"""The web console (`golioth-sync console`): server-rendered pages over golioth_assets.actions."""
