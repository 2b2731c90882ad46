"""The Textual dashboard. Never imported in headless mode; never touches sockets."""
