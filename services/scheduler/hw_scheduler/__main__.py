from hw_scheduler.main import main

main()
