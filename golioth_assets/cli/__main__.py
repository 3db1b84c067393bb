from golioth_assets.cli.main import main

main()
