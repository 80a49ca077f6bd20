"""The sans-I/O protocol core: no sockets, threads, sqlite3, zeroconf or clock; time is passed in."""  # noqa: E501
