from hw_fs.main import main

main()
