"""The control protocol's messages and state machines, without I/O: both sides
(vserver, vclient, vctl) speak through these, so they cannot drift apart."""
