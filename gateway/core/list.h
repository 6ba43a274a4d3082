/* container_of: from a member embedded in a struct back to the struct. Ops
 * and timers are embedded in their owners and their callbacks use it. */
#ifndef GW_CORE_LIST_H
#define GW_CORE_LIST_H

#include <stddef.h>

#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

#endif
