from forgehall.cli.main import main

main()
