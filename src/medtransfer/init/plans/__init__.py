"""One module per initialisation, each defining ``INIT`` (:class:`medtransfer.init.traits.Init`).

:mod:`medtransfer.init.registry` imports every module here, so adding an init is adding a file.
"""
