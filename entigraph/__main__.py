from entigraph.cli import main

main()
