"""Data: read files, validate rows, tokenize with masking, batch padding-free."""
