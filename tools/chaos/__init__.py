"""A randomized fault schedule against the three-host cluster, and a checker of every guarantee
over what the clients saw (Jepsen's way: a nemesis, a history, a checker). Entry point:
tools/chaos/run.py."""
