"""The sans-I/O protocol core: no sockets, threads, sqlite3, zeroconf or clock.

Time is passed in; links are opaque ids."""
