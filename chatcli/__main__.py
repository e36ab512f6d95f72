from chatcli.cli.app import main

main()
