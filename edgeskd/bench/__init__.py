"""`edgeskd bench`: accuracy and speed of every artifact, side by side."""
