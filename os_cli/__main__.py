from os_cli.cli import main

main()
