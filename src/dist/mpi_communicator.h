// Open MPI behind the Communicator interface. The same dsmoe binary runs as one process when not
// started by mpirun (no MPI_Init at all, so nothing of MPI's start-up or environment is needed), and
// as rank r of P under `mpirun -np P`.
#pragma once
#include <memory>

#include "dist/communicator.h"

namespace dsmoe {

// True when this process was started by mpirun / a PMIx launcher (its environment says so).
bool launched_by_mpi();

// The processes of this job: the MPI world when launched_by_mpi() (MPI is initialised on the first
// call and finalised at exit), else a SingleProcessCommunicator. Each call returns a new handle onto
// the same group.
std::unique_ptr<Communicator> world_communicator();

// For a fatal error on one rank while the others may be inside a collective: ends the whole job
// (MPI_Abort) with `code` when MPI is running with more than one process; otherwise returns.
void abort_job_if_parallel(int code);

}  // namespace dsmoe
