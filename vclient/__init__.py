"""fencevol volume client: server link, attached volumes, fence gate, node daemon."""
