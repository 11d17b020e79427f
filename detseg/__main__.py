from detseg.cli import main

main()
