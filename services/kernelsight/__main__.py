from kernelsight.cli import main

main()
