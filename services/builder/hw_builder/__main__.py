from hw_builder.main import main

main()
