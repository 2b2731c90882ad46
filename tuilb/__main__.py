from tuilb.cli import entry

entry()
