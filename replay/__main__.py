"""`python -m replay`: the `miniagents` command line."""

from replay.inspection import main

if __name__ == "__main__":
    main()
