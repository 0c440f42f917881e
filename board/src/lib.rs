//! Outpost's front panel: LCD, buttons, LEDs and watchdog over embedded-hal.
