from hw_worker.main import main

main()
