"""A tiny app for the python-app example: prints where it runs."""

import argparse
import os
import platform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="world")
    args = parser.parse_args()
    print(f"hello, {args.name}")
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")
    print(f"{os.cpu_count()} CPU(s), working directory {os.getcwd()}")


if __name__ == "__main__":
    main()
