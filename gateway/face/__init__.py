"""The face: the route table and handlers, downloads, the request handler, the server process."""
