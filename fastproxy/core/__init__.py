"""The pure bottom layer: ASGI types, msgspec schemas, the error tree, settings, the records every
observer reads, and the seams (Protocols) adapters implement. Imports nothing else of fastproxy."""
