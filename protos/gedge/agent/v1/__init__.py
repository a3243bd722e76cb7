"""Generated gRPC code for the gedge node agent contract."""
