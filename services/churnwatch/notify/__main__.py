"""`python -m churnwatch.notify` runs `churnwatch notify` (the same options)."""

from churnwatch.notify.commands import notify

if __name__ == "__main__":
    notify(prog_name="churnwatch notify")
