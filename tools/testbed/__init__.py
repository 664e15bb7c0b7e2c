"""The test bed shared by the tests and the tools (tools/cluster, check, bench,
soak): real processes, loop devices, network faults and what the checker reads.

- ``processes``: start and stop vserver, vclient and vctl; readiness, polling, stalls;
- ``disks``: loop devices over images (separate page caches);
- ``netfaults``: nftables drop rules on loopback heartbeat ports;
- ``hostsnet``: network namespaces with veth pairs (the hosts test bed);
- ``cluster``: a server plus n nodes on one machine;
- ``records``: the writer's log and the records on the backing disks;
- ``verdicts``: the checker's judgement, pure;
- ``certs``: test TLS certificates.

Scripts in tools/ import it as ``testbed`` (their own directory is on the path);
pytest has tools/ on its ``pythonpath``."""
