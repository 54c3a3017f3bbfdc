from hw_triggers.main import main

main()
