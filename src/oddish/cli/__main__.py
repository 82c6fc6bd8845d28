from oddish.cli import main

main()
