import sys

from gem_ros.doctor.cli import main

sys.exit(main())
