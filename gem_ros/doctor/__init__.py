"""gem_doctor: is the live graph ready for this arm configuration and checkpoint? (facts -> checks -> table)"""
