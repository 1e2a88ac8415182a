"""The built-in JUNO plugin: a faithful miniature of JUNO's keep-up chain.

``detector`` holds the detector's physical constants, ``formats`` the names and types of
the ROOT trees the steps exchange, ``rootio`` streaming reading and atomic writing of
those trees; ``geometry``, ``physics`` and ``daqsim`` simulate the detector and its DAQ;
``calib``, ``rec`` and ``hist`` are the step programs the JUNO pipeline files call
(``runwatch juno calib|rec|hist``).
"""
