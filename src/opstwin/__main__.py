from opstwin.cli import main

main()
