"""A stand-in job for launch/local_multihost.sh: process 1 fails, process 0 would hang."""

import sys
import time

if __name__ == '__main__':
  process = int(next(a for a in sys.argv if a.startswith('--process_id=')).split('=')[1])
  if process == 1:
    print('process 1 fails', flush=True)
    sys.exit(3)
  print('process 0 waits for a peer that is gone', flush=True)
  time.sleep(600)
