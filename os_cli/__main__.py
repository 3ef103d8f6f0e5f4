from os_cli.entry import main

main()
