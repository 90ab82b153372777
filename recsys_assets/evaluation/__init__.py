"""The day's offline evaluation: every method on one protocol, whatever the model gates decided."""
