"""Running the whole system on loopback: scripted users, the stack, the demo and the chaos run."""
