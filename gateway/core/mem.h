/* Allocation that never returns NULL: running out of memory aborts, as in
 * h2o and Redis. Configured caps (connections, buffers) bound what we ask for. */
#ifndef GW_CORE_MEM_H
#define GW_CORE_MEM_H

#include <stddef.h>

void *gw_xmalloc(size_t n);
void *gw_xcalloc(size_t nmemb, size_t size);
void *gw_xrealloc(void *p, size_t n);
char *gw_xstrdup(const char *s);
char *gw_xstrndup(const char *s, size_t n);

#endif
