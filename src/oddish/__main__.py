from oddish.main import main

main()
