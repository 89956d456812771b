"""`python -m cnetcli ...` (and so `accelerate launch -m cnetcli ...`)."""

from cnetcli.cli import main

if __name__ == "__main__":
    main()
