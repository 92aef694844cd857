"""Text generation behind one interface: conversations in, n samples for each out."""
