"""The running process: stop signals (``interrupts``), memory and huge pages (``memory``), BLAS threads
(``threads``). The lowest stage: nothing here imports the rest of nst_core."""
