"""Every key of the dashboard, as data. Help for commands comes from the control registry,
so a command's help is written once for keys, palette, admin API and `tuilb ctl`."""

from __future__ import annotations

from dataclasses import dataclass

from tuilb.control import REGISTRY


@dataclass(frozen=True, slots=True)
class Key:
    keys: str  # Textual key names, comma separated
    action: str  # an action of TuilbApp
    label: str  # short, for the footer
    help: str
    footer: bool = True
    priority: bool = False  # works even while an input or a dialog has the focus


def _command_help(name: str) -> str:
    return REGISTRY[name].help


KEYS: tuple[Key, ...] = (
    Key("d", "drain", "Drain", _command_help("drain")),
    Key("e", "enable", "Enable", _command_help("enable")),
    Key("x", "disable", "Disable", _command_help("disable") + " Asks first."),
    Key("plus,equals_sign", "weight_step(1)", "+1", "Raise the weight by 1."),
    Key("minus", "weight_step(-1)", "-1", "Lower the weight by 1."),
    Key("w", "weight_input", "Weight", "Set an exact weight (0..256, or +N / -N)."),
    Key("r", "reset", "Reset", _command_help("reset")),
    Key(
        "R",
        "reload",
        "Reload",
        "Re-read the configuration file (as SIGHUP does); an invalid one changes nothing.",
        footer=False,
    ),
    Key("enter", "details", "Details", "Show the backend's counters and recent events."),
    Key("slash", "filter", "Filter", "Show only rows containing some text; Escape clears."),
    Key("t", "cycle_theme", "Theme", "Switch to the next colour theme."),
    Key("question_mark", "help", "Help", "Show every key with its help."),
    Key("j", "cursor(1)", "Down", "Move down a row (or use the arrow keys).", footer=False),
    Key("k", "cursor(-1)", "Up", "Move up a row (or use the arrow keys).", footer=False),
    Key(
        "q",
        "quit",
        "Quit",
        "Shut down gracefully: stop accepting, let connections finish (asks if any are open).",
    ),
    Key(
        "ctrl+q,ctrl+c",
        "quit(True)",
        "Quit",
        "Quit from anywhere, even from a dialog or an input (then as q).",
        footer=False,
        priority=True,
    ),
)
