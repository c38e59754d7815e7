from cloud.launch import main

main()
