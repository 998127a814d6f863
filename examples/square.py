"""Print the square of the number given as the last argument (a tiny map item)."""

import sys

print(int(sys.argv[-1]) ** 2)
